"""Knowledge distillation: losses, the distiller that sums them, the teacher and the train loop."""
