# Use the compiled core (edge/native.py) only if it matches these sources; decided before any
# compiled module can be imported.
from edge.native import select as _select_native

_select_native()
