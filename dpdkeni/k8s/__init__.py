"""Kubernetes pieces: the device plugin (``dpdkeni k8s device-plugin``) that offers the node's hot-plugged NICs
to DPDK pods as extended resources. Needs the ``k8s`` extra (grpcio, grpcio-tools)."""
