"""Layer 1, the tasks: benchmark definitions and goal texts (`tasks`), Meta-World environments and
rendering (`metaworld_env`), scripted experts (`experts`). Imports only `cmrl.config`."""
