"""The compute layer: everything that needs torch and a backbone.

The frozen backbone and its kernels (`backbone`, `kernels`), prompts (`prompt`), the multi-prompt
optimizer (`bank_optim`), prompt tuning and evaluation (`tuning`), the upstream methods
(`upstream`, `algorithms/`), the executor that runs units of work (`executor`), task embeddings
(`embeddings`), the Ray actor (`ray_actor`) and model loading (`models`). It may import the base,
experiment and store layers. The layers above import it only inside functions, once a device is
held, so that planning, the app and the CLI stay torch-free; this face therefore imports nothing.
"""
