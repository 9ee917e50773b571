"""Files in and out: atomic outputs (`outputs`), mp4 video and init clips (`video`), weight files (`weights`),
where an output came from (`provenance`) and a saved video's sidecar read back (`sidecar`)."""
