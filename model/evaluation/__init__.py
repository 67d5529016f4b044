"""Evaluating a trained model: loss and bits per byte over a text (text.py), multiple-choice
accuracy in HellaSwag's format (multiple_choice.py) and a chat model's final replies (chat.py).
`python -m model.eval` runs them."""
