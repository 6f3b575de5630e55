"""Building kafka-python clients only when the broker answers.

kafka-python 3.0 starts an IO thread in a client's constructor; when the constructor then fails
(broker not up yet, restarting), that thread keeps retrying with its sockets open, and nothing can
stop it: the half-built client is unreachable. Loops that retry a client while the broker comes
back (topic creation at start, the web's consumer, the benchmarks' offset polls) first check that a bootstrap server
accepts a TCP connection (``require_reachable``), so a broker that is away costs a refused
connect, not a leaked thread. (``KafkaProducer`` leaves no thread behind when it fails.)
"""

import socket


def require_reachable(bootstrap: str, timeout: float = 1.0) -> None:
    """Return when one of ``bootstrap``'s ``host:port`` servers accepts a TCP connection;
    raise ``OSError`` otherwise."""
    failure = OSError(f"no bootstrap server reachable: {bootstrap}")
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not port.isdigit():
            failure = OSError(f"not host:port: {server!r}")
            continue
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except OSError as exc:
            failure = exc
    raise failure
