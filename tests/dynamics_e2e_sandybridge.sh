#!/bin/bash
# dynamics_e2e_sandybridge.sh - tests/dynamics_e2e.sh under OpenBLAS's
# Sandybridge kernels (AVX, no FMA), a family other than the Haswell one
# dynamics_e2e.sh uses: other machines' numbers move the training
# trajectories, and the transitions must still be found where the dense
# training logs put them.
DYN_CORETYPE=Sandybridge exec tests/dynamics_e2e.sh
