"""The QEMU driver: one microVM per box, supervised by a per-box shim.

driver.py    the Driver (start, stop, exec, pause, snapshot starts)
argv.py      QemuSpec -> QEMU's argv (pure)
shim.py      the per-box supervisor process (QEMU, virtiofsd, the network helper)
shim_loop.py the shim's steady state (loop/shim_loop.c, exec'd by shim.py once QEMU runs)
qmp.py       the QMP client (sans-IO codec + a thin socket loop)
snapshot.py  snapshot keys and the template store
probe.py     which accelerator works here (KVM or TCG), cached
virtiofs.py  virtiofsd per bind volume

Nothing is imported here: the shim, started once per box, must not pay for the driver's
imports (the egress proxy's CA pulls in cryptography).
"""
