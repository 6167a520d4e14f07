"""The `face_recognition` command: names the known people (one photo each in a folder, named
after the file) in an image or a folder of images, one CSV line per face, as face_recognition
1.3.0's tool does: ``path,name`` (``,distance`` with --show-distance), ``unknown_person`` for a
face no known person matches, ``no_persons_found`` for an image without a face."""

from __future__ import annotations

import itertools
import os
from typing import List, Optional, Sequence, Tuple

import click
import numpy as np
import PIL.Image

from . import api as face_recognition
from ._folder import image_files_in_folder, run_in_process_pool

# face_recognition shrinks larger photos to fit this square (PIL thumbnail, Lanczos) first.
_MAX_SIDE = 1600


def scan_known_people(known_people_folder: str) -> Tuple[List[str], List[np.ndarray]]:
    """The names (file names without extension) and first-face encodings of the known people;
    a file with no face is skipped, one with several uses the first, each with a warning."""
    names: List[str] = []
    encodings: List[np.ndarray] = []
    for path in image_files_in_folder(known_people_folder):
        found = face_recognition.face_encodings(face_recognition.load_image_file(path))
        if len(found) > 1:
            click.echo(f"WARNING: More than one face found in {path}. Only considering the first face.")
        if not found:
            click.echo(f"WARNING: No faces found in {path}. Ignoring file.")
            continue
        names.append(os.path.splitext(os.path.basename(path))[0])
        encodings.append(found[0])
    return names, encodings


def print_result(filename: str, name: str, distance: Optional[float],
                 show_distance: bool = False) -> None:
    """One output line: ``filename,name`` or ``filename,name,distance``."""
    fields = [filename, name] + ([distance] if show_distance else [])
    print(",".join(str(f) for f in fields))


def _shrunk(image: np.ndarray) -> np.ndarray:
    # max over the whole shape, channels included, as face_recognition tests it.
    if max(image.shape) <= _MAX_SIDE:
        return image
    pil = PIL.Image.fromarray(image)
    pil.thumbnail((_MAX_SIDE, _MAX_SIDE), PIL.Image.LANCZOS)
    return np.array(pil)


def test_image(image_to_check: str, known_names: Sequence[str],
               known_face_encodings: Sequence[np.ndarray], tolerance: float = 0.6,
               show_distance: bool = False) -> None:
    """Prints the known people matching each face of one image (every match, in the known
    people's order), ``unknown_person`` for a face without one."""
    image = _shrunk(face_recognition.load_image_file(image_to_check))
    encodings = face_recognition.face_encodings(image)
    for encoding in encodings:
        distances = face_recognition.face_distance(known_face_encodings, encoding)
        matches = [(n, d) for n, d in zip(known_names, distances) if d <= tolerance]
        for name, distance in matches:
            print_result(image_to_check, name, distance, show_distance)
        if not matches:
            print_result(image_to_check, "unknown_person", None, show_distance)
    if not encodings:
        print_result(image_to_check, "no_persons_found", None, show_distance)


def process_images_in_process_pool(images_to_check: Sequence[str], known_names: Sequence[str],
                                   known_face_encodings: Sequence[np.ndarray],
                                   number_of_cpus: int, tolerance: float,
                                   show_distance: bool) -> None:
    """test_image for each image in `number_of_cpus` processes (-1: one per core)."""
    arguments = zip(images_to_check, itertools.repeat(known_names),
                    itertools.repeat(known_face_encodings), itertools.repeat(tolerance),
                    itertools.repeat(show_distance))
    run_in_process_pool(test_image, arguments, number_of_cpus)


@click.command()
@click.argument("known_people_folder")
@click.argument("image_to_check")
@click.option("--cpus", default=1,
              help='number of CPU cores to use in parallel (can speed up processing lots of images). -1 means "use all in system"')
@click.option("--tolerance", default=0.6,
              help="Tolerance for face comparisons. Default is 0.6. Lower this if you get multiple matches for the same person.")
@click.option("--show-distance", default=False, type=bool,
              help="Output face distance. Useful for tweaking tolerance setting.")
def main(known_people_folder: str, image_to_check: str, cpus: int, tolerance: float,
         show_distance: bool) -> None:
    known_names, known_face_encodings = scan_known_people(known_people_folder)
    if not os.path.isdir(image_to_check):
        test_image(image_to_check, known_names, known_face_encodings, tolerance, show_distance)
    elif cpus == 1:
        for path in image_files_in_folder(image_to_check):
            test_image(path, known_names, known_face_encodings, tolerance, show_distance)
    else:
        process_images_in_process_pool(image_files_in_folder(image_to_check), known_names,
                                       known_face_encodings, cpus, tolerance, show_distance)


if __name__ == "__main__":
    main()
