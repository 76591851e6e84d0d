#!/bin/bash
# dynamics_e2e_sandybridge.sh - tests/dynamics_e2e.sh under OpenBLAS's
# Sandybridge kernels (AVX, no FMA), a family other than the Haswell one
# dynamics_e2e.sh uses: other machines' numbers move the training
# trajectories, and the transitions must still be found where the dense
# training logs put them.  Ports of its own (PostgreSQL 54406, HTTP
# 18612-18613): make check runs it beside dynamics_e2e.sh.
DYN_CORETYPE=Sandybridge DYN_PG_PORT=54406 DYN_HTTP_PORT=18612 exec tests/dynamics_e2e.sh
