"""The shapes world: procedural scenes, prompts about them, a renderer and an exact evaluator."""
