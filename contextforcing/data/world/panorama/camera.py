"""The panorama world's camera as a room-anchored model reads it: the heading change a prompt implies.

A prompt's camera action (`hold`, `pan left`, `pan right`) moves the view one latent column per latent frame
(`PAN_PX_PER_LATENT` px); in tokens of `token_px` pixels that is the heading step per latent frame. Integrated
from frame 0 (`sampling.camera.script_headings`) it equals the simulator's camera (`latent_camera /
token_px`, tested), so a model can be given the room position of every token from the script alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from contextforcing.config import ModelConfig, VideoConfig
from contextforcing.data.world.panorama.geometry import PAN_PX_PER_LATENT, ROOM_WIDTH
from contextforcing.data.world.panorama.script import CAMERA_STEP, parse_panorama_prompt
from contextforcing.errors import UserError


@dataclass(frozen=True)
class PanoramaCamera:
    """Heading step of a panorama prompt, in tokens of `token_px` pixels per latent frame."""

    token_px: int

    @classmethod
    def for_model(cls, model: ModelConfig, video: VideoConfig) -> "PanoramaCamera":
        """The camera of a model whose tokens cover patch x vae_stride pixels; its room must be the world's."""
        camera = cls(model.patch_size[2] * video.vae_stride_hw)
        if model.room_anchored and model.room_tokens * camera.token_px != ROOM_WIDTH:
            raise UserError(
                f"the model's room is {model.room_tokens} tokens of {camera.token_px} px; the panorama room is "
                f"{ROOM_WIDTH} px around"
            )
        return camera

    def __call__(self, prompt: str) -> float:
        return CAMERA_STEP[parse_panorama_prompt(prompt).camera] * PAN_PX_PER_LATENT / self.token_px
