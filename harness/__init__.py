"""Claims harness: MC data → prompts → model → residual at a layer → SAE → scores → claims → report."""
