"""Publishing a trained model: the model card, the publish folder and the upload."""
