"""``meshcore demo``: a whole mesh on loopback, in the spirit of Istio's Bookinfo.

- :mod:`meshcore.demo.apps`: the four applications (plain Python web servers);
- :mod:`meshcore.demo.layout`: the ports, the workloads, the mesh resources (package data
  in ``mesh/``) rendered with this run's ports, and the edits the guided tour makes;
- :mod:`meshcore.demo.run`: the processes (a control plane, a sidecar and an application
  per workload), the traffic generator, and a clean stop.
"""
