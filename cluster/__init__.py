"""The contract every Baton process speaks: the etcd key layout and the
records stored under it, the agent gRPC protocol, names and tokens, the
build-file format. It imports only `lease/`; the coordinator, the agent and
the web UI import it, never each other."""
