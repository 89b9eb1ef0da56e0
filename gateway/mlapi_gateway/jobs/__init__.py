"""Async jobs: a persistent store (SQLite), a runner that resumes after restarts, webhooks."""
