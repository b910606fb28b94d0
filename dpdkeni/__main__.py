"""``python -m dpdkeni``."""
from .cli import run

run()
