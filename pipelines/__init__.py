"""The Ray layer of clad: Ray Data preprocessing, Ray Train, Ray Tune, rollout actor pools, and the CLI."""
