"""Remote inference: serve chunk policies over openpi's websocket protocol, with RTC and batching.

Server (a GPU machine)::

    rtchunk serve --policy-dir runs/demo/levels/h17_unicycle/policy --method rtc --port 8000

Robot (numpy, msgpack and websockets only)::

    from rtchunk.runtime import Runtime, RuntimeConfig, Paper
    from rtchunk.serving import RemotePolicy
    policy = RemotePolicy("ws://gpu-host:8000")
    with Runtime(policy, RuntimeConfig(replan=Paper(s_min=3)), robot=my_robot) as rt: ...

See docs/serving.md. Names load on first use: importing the client loads neither the server's backends
nor JAX.
"""

from rtchunk.lazy import lazy_exports

_EXPORTS = {
    "RemotePolicy": "rtchunk.serving.client",
    "ServerUnreachable": "rtchunk.serving.client",
    "ServerUnavailable": "rtchunk.serving.client",
    "ServerRefused": "rtchunk.serving.client",
    "ServerError": "rtchunk.serving.client",
    "PolicyServer": "rtchunk.serving.server",
    "ServerConfig": "rtchunk.serving.server",
    "ToyBackend": "rtchunk.serving.backends",
    "SampleBatch": "rtchunk.serving.backends",
    "JaxBackend": "rtchunk.serving.jax_backend",
    "TorchBackend": "rtchunk.serving.torch_backend",
    "find_checkpoint": "rtchunk.serving.checkpoint",
    "load_backend": "rtchunk.serving.checkpoint",
    "ProtocolError": "rtchunk.serving.protocol",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("rtchunk.serving", _EXPORTS, globals())
