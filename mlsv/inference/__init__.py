"""Using a trained model: embedding, scoring, verification, identification, tracking, evaluation, export."""
