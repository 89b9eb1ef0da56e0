# --- Container images (docker/, docs/images.md) ---
.PHONY: images

images: models $(INSTALLED) ## Build triton-cpu and gateway with buildah (root, apt, minutes), run both, predict once
	bash docker/build-images.sh
