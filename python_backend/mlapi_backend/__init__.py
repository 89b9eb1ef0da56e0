"""Shared library of the project's Triton Python-backend models.

Imported by model.py files inside the Triton stub and by plain unit tests; it never imports
``triton_python_backend_utils``.
"""
