"""The scripted panorama world: a cylindrical room seen through a panning camera, controlled by prompt scripts.

See docs/world.md. Entry points: `parse_panorama_prompt`/`read_script` (the grammar), `PanoramaSpec` +
`simulate` (exact ground truth from script and seed), `render`, `find_revisits`/`track_revisits`,
`sample_training_script` (random scripts for training), `heldout_worlds` (the evaluation set).
"""
