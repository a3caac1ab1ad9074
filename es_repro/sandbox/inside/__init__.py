"""Code that runs INSIDE a sandbox worker process (never in the training process): the fork server (zygote.py)
and the job handlers (handlers.py). Stdlib only at import time; handlers import their libraries when warmed."""
