"""Run the real tritonserver locally: backend directory assembly and process control."""
