"""Load harness and benchmark tooling for the project's Triton deployment."""
