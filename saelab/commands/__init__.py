"""The sub-commands of `saelab` beyond `quickstart` (which lives in `saelab.cli`): `flow`
(train or load the SAEs of a span of blocks, predecessor groups, deactivation, a report) and
`steer` (a flow graph from a seed feature, steered against unsteered text). Each module adds
its parser and runs its command through the Python API; `common` holds the argument
parsing and checks they share. Heavy imports (pandas, networkx, the model) happen inside
the run functions, so `saelab --help` stays fast.
"""
