"""Evaluating a trained model: loss and bits per byte over a text (text.py), and multiple-choice
accuracy in HellaSwag's format (multiple_choice.py). `python -m model.eval` runs them."""
