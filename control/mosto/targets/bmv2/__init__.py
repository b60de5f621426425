"""The BMv2 target: the P4 program of p4src/ on simple_switch_grpc, driven over P4Runtime."""
