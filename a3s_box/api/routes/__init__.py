"""The endpoints of `box serve`, one APIRouter per resource; app.py includes them in this order:

system.py   /healthz and /metrics
boxfile.py  validate, plan and apply a Boxfile sent as the body
boxes.py    list, inspect, stop, start and delete boxes
exec.py     run a command in a box, at once or interactively (WebSocket)
files.py    a box's files: read, write, list, remove, and trees as tar streams
pools.py    pools, and leasing a box from one and giving it back
images.py   the image store: list and pull
events.py   the audit log as server-sent events

Each gets the Host and the app's state from api/deps.py, never from another routes
module or from the app (import-linter keeps it so).
"""
