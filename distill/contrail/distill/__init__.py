"""The student side of contrail: how good a dataset's rationales are (quality signals, LAS with a
validated simulator), and the student-training exports. It reads datasets, never the queue: it
imports nothing of the job protocol, the worker loop or the API (an import-linter contract holds
that), so evaluation installs without the queue worker (`pip install "contrail[eval]"`).

Modules: `las` (the LAS metric, bootstrap, simulator protocol, the likelihood simulator),
`simulators` (the trained simulator: hidden-state reader and linear heads), `heads` (the committed
heads), `options` (simulator options shared by the CLI and the entry point), `report` (summaries,
reports and the `contrail eval` / `contrail export` entry point), `export` (the student export)
and `cli` (those commands, registered into the `contrail` CLI).
"""
