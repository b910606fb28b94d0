"""Test-bed pieces shared by dpdkeni's tests, benchmarks and lab guest: throw-away namespace topologies
(:mod:`~dpdkeni.testbed.topo`) and the kernel's XDP live-frames generator (:mod:`~dpdkeni.testbed.xdpgen`).

They build and remove their own namespaces and links (addresses from 198.18.0.0/15) and are not part of the node
API: a node agent has no use for them, a benchmark of one does.
"""
