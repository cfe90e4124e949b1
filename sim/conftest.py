# SPDX-License-Identifier: Apache-2.0
import sys
from pathlib import Path

# cocotb imports testbench modules by name, in a simulator process that inherits sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
