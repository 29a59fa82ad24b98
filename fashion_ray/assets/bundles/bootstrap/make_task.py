"""Rebuild pose_landmarker_full.task from the mediapipe 0.10.21 wheel (run once, offline).

mediapipe 1.2.2's PoseLandmarker needs a .task bundle whose models carry input
normalisation metadata; 0.10.21 ships the two pose models without it and is the last
release whose metadata writer works. Run in a separate venv (0.10.21 wants numpy<2):

    python3 -m venv /tmp/mp21 && /tmp/mp21/bin/pip install --no-deps mediapipe==0.10.21 \
        && /tmp/mp21/bin/pip install 'numpy<2' 'protobuf>=4.25.3,<5' absl-py attrs flatbuffers \
           'opencv-python-headless<5' matplotlib sentencepiece
    /tmp/mp21/bin/python fashion_ray/assets/bundles/bootstrap/make_task.py fashion_ray/assets/bundles/bootstrap/
    # then update the sha256s in bundle.json (the .task is a zip with timestamps: every rebuild differs)

The face models are copied unchanged from mediapipe/modules/face_detection/.
"""

import os
import shutil
import sys

from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer, model_asset_bundle_utils

MODULES = os.path.normpath(os.path.join(os.path.dirname(metadata_writer.__file__), "../../../../modules"))


def with_normalisation(path: str, mean: float, std: float, name: str) -> bytes:
    writer = metadata_writer.MetadataWriter.create(open(path, "rb").read())
    writer.add_general_info(name, "MediaPipe model from the mediapipe 0.10.21 wheel (Apache-2.0)")
    writer.add_image_input(norm_mean=[mean], norm_std=[std], color_space_type=metadata_info._metadata_fb.ColorSpaceType.RGB)
    model, _ = writer.populate()
    return model


def main(out_dir: str) -> None:
    detector = with_normalisation(f"{MODULES}/pose_detection/pose_detection.tflite", 127.5, 127.5, "pose_detector")
    landmarks = with_normalisation(f"{MODULES}/pose_landmark/pose_landmark_full.tflite", 0.0, 255.0, "pose_landmarks_detector")
    model_asset_bundle_utils.create_model_asset_bundle(
        {"pose_detector.tflite": detector, "pose_landmarks_detector.tflite": landmarks},
        os.path.join(out_dir, "pose_landmarker_full.task"))
    for name in ("face_detection_short_range.tflite", "face_detection_full_range_sparse.tflite"):
        shutil.copy(f"{MODULES}/face_detection/{name}", out_dir)


if __name__ == "__main__":
    main(sys.argv[1])
