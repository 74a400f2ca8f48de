"""The E2B-compatible API of `box serve` (under /e2b): E2B's REST control API and envd's
Process and Filesystem services (Connect RPC, generated from E2B's protos in envd/), so
agents written against the `e2b` SDKs run here unchanged. A template is a pool (an
acquire: warm start) or a declared box of an applied Boxfile; a sandbox is an ordinary
box (`box ps`, logs, network policy, secrets and pools all apply) whose name is its ID.

Threat: the SDK's caller is a tenant, with a sandbox token as its API key, and the code in
the sandbox is hostile. The API key reaches only the templates its token names and the
sandboxes made with it (another's answers 404); envd calls need the sandbox's own access
token (minted at create, stored as a digest), so knowing a sandbox ID gives nothing; a
sandbox whose traffic is not public needs its traffic token on its port URLs. Fails
closed: a request that names no sandbox we know, or carries no token that matches, is
refused before it reaches a box; a sandbox asked to be created without `secure` is refused.
"""
