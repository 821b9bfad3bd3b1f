"""The local stack: Tansu broker, PostgreSQL and the workers as separate processes.

Programmatic API (`concord stack`, in `concord/cli/stack.py`, is a thin layer over it):

- ``await start_stack(state_dir, workers=..., progress=print, worker_command=...) -> StackInfo``
- ``stop_stack(state_dir) -> list[StopResult]``
- ``load_stack_env(state_dir) -> dict[str, str]`` (what `concord` tools connect to)
- lower level: ``start_broker``, ``ensure_topics``, ``start_postgres``, ``start_worker``,
  ``wait_worker_ready``, ``restart_worker``, ``stop_process``, ``stop_processes``;
  more workers of a service: ``start_stack(replicas=...)``, ``add_worker``, ``remove_workers``;
  a database outage (fault tests): ``stop_postgres``, ``start_postgres_again``.
"""

from concord.stack.broker import BrokerInfo, ensure_topics, start_broker
from concord.stack.postgres import (
    PostgresInfo,
    create_database,
    drop_database,
    start_postgres,
    use_external_postgres,
)
from concord.stack.processes import (
    ProcessDied,
    ProcessRecord,
    StopResult,
    free_port,
    health_ok,
    is_alive,
    spawn,
    stop_process,
    stop_processes,
)
from concord.stack.stack import (
    ALL_SERVICES,
    WORKER_COMMAND,
    StackError,
    StackInfo,
    add_worker,
    load_stack_env,
    remove_worker,
    remove_workers,
    restart_worker,
    stack_status,
    start_postgres_again,
    start_stack,
    start_worker,
    stop_postgres,
    stop_stack,
    wait_worker_ready,
    worker_service,
)

__all__ = [
    "ALL_SERVICES",
    "WORKER_COMMAND",
    "BrokerInfo",
    "PostgresInfo",
    "ProcessDied",
    "ProcessRecord",
    "StackError",
    "StackInfo",
    "StopResult",
    "add_worker",
    "create_database",
    "drop_database",
    "ensure_topics",
    "free_port",
    "health_ok",
    "is_alive",
    "load_stack_env",
    "remove_worker",
    "remove_workers",
    "restart_worker",
    "spawn",
    "stack_status",
    "start_broker",
    "start_postgres",
    "start_postgres_again",
    "start_stack",
    "start_worker",
    "stop_postgres",
    "stop_process",
    "stop_processes",
    "stop_stack",
    "use_external_postgres",
    "wait_worker_ready",
    "worker_service",
]
