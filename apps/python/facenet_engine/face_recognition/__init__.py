"""A drop-in for face_recognition 1.3.0 on the engine: ``import facenet_engine.face_recognition
as face_recognition`` and use it as the PyPI package (same functions, arguments, defaults,
return types; submodules ``api``, ``face_recognition_cli``, ``face_detection_cli``). dlib's
detectors, landmark models and face ResNet run inside the engine's pipeline; see
:mod:`facenet_engine.face_recognition.api` for how calls map onto it and where results differ.
"""

# face_recognition 1.3.0's own __init__ still says 1.2.3; the drop-in reports what it replaces.
__author__ = """Adam Geitgey"""
__email__ = "ageitgey@gmail.com"
__version__ = "1.2.3"

from .api import (  # noqa: E402
    batch_face_locations,
    compare_faces,
    face_distance,
    face_encodings,
    face_landmarks,
    face_locations,
    load_image_file,
)

from .api import __all__  # noqa: E402,F811  (the names above)
