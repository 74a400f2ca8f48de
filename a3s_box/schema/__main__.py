import sys

from a3s_box.schema import schema_text

sys.stdout.write(schema_text())
