"""The student side of the method (docs/METHOD.md section 3): what a student learns from a
contrail dataset (`examples`), and how its rationales are perturbed for evaluation (`perturb`).
Training and evaluation build on these."""
