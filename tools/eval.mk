# Evaluation of the served digits model (mlapi_tools.eval): included by the Makefile.
.PHONY: eval

eval: models backends ## Evaluate digits on its evaluation sets (starts a server): table + PNG plots in build/eval
	$(BIN)/python -m mlapi_tools.eval digits --repository $(REPO) --backend-dir build/backends --out build/eval
