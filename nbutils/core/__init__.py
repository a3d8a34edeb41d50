"""What every stage shares: errors, durable writes, configs, paths, devices, model loading, audio
input, WandB, fault injection and synthetic test music. Nothing here imports a stage or Colab.
"""
