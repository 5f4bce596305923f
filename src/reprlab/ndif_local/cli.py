"""``reprlab ndif up`` / ``reprlab ndif down``: a local NDIF to test remote code against."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from reprlab.cliutil import opt, require, subcommand


@dataclass
class NdifUpCommand:
    """Start a local NDIF (Redis, Ray with NDIF's controller and a CPU model actor, NDIF's
    API on 127.0.0.1) with one model deployed, and print the host for --ndif-host."""

    model: str = opt("toy", help="toy, toy-mini or a local Hugging Face model folder")
    port: int = opt(8001, help="port of NDIF's API on 127.0.0.1")
    redis_port: int = opt(6379, help="port of Redis on 127.0.0.1")
    ray_port: int = opt(6385, help="port of Ray's head (the next two ports are used too)")
    timeout: float = opt(300.0, help="seconds to wait for the model to load")

    def __post_init__(self) -> None:
        for name in ("port", "redis_port", "ray_port"):
            value = getattr(self, name)
            require(0 < value < 65534, f"--{name.replace('_', '-')} must be a port number, "
                                       f"got {value}")
        require(self.timeout > 0, f"--timeout must be positive, got {self.timeout}")


@dataclass
class NdifDownCommand:
    """Stop the local NDIF started by `reprlab ndif up` (by the process ids it recorded)."""


def run_up(cfg: NdifUpCommand) -> int:
    from reprlab.ndif_local import stack

    host = stack.up(cfg.model, port=cfg.port, redis_port=cfg.redis_port,
                    ray_port=cfg.ray_port, timeout=cfg.timeout)
    print(host)
    return 0


def run_down(cfg: NdifDownCommand) -> int:
    from reprlab.ndif_local import stack

    stopped = stack.down()
    print(f"stopped {len(stopped)} processes" if stopped else "no local NDIF was running")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ndif", help="a local NDIF server to test remote code against",
                            description="Run NDIF's own server code on this machine.")
    group = parser.add_subparsers(dest="ndif_command", metavar="ACTION", required=True)
    subcommand(group, "up", NdifUpCommand, run_up, "start a local NDIF and print its host")
    subcommand(group, "down", NdifDownCommand, run_down, "stop the local NDIF")
