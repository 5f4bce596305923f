"""A local NDIF: reprlab's remote requests executed by the NDIF server's own code.

:mod:`reprlab.ndif_local.core` runs the exact bytes nnsight's ``RemoteBackend`` would POST
through NDIF's own deserialise-and-execute functions beside a model loaded here, with no
services (the check the default test suite runs). Installing the server package:
``bash tests/tools/install_ndif.sh`` (NDIF declares Python >= 3.12; its modules run on 3.11).
"""
