"""Development and operations tools around the runtime package.

Nothing here is imported by a ``model.py``: ``mlapi_tools.build`` trains and exports the
default models, ``mlapi_tools.local`` assembles the local backend directory, launches
tritonserver with the gateway and supervises the Python stubs. The Triton image installs
only ``mlapi_backend``.
"""
