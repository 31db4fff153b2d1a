"""The model repository and the model: contract, repository, predictor. No Flask here."""
