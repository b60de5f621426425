"""The XDP target: libbpf bindings, map ABI, and the target object."""
