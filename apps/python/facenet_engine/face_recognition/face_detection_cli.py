"""The `face_detection` command: prints ``path,top,right,bottom,left`` for each face found
(no upsampling, HOG or CNN) in an image or a folder of images, as face_recognition 1.3.0's
tool does."""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import click

from . import api as face_recognition
from ._folder import image_files_in_folder, run_in_process_pool


def print_result(filename: str, location: Sequence[int]) -> None:
    """One output line: ``filename,top,right,bottom,left``."""
    top, right, bottom, left = location
    print(f"{filename},{top},{right},{bottom},{left}")


def test_image(image_to_check: str, model: str) -> None:
    """Prints every face of one image, found at the image's own size."""
    image = face_recognition.load_image_file(image_to_check)
    for location in face_recognition.face_locations(image, number_of_times_to_upsample=0,
                                                    model=model):
        print_result(image_to_check, location)


def process_images_in_process_pool(images_to_check: Sequence[str], number_of_cpus: int,
                                   model: str) -> None:
    """test_image for each image in `number_of_cpus` processes (-1: one per core)."""
    run_in_process_pool(test_image, zip(images_to_check, itertools.repeat(model)),
                        number_of_cpus)


@click.command()
@click.argument("image_to_check")
@click.option("--cpus", default=1,
              help='number of CPU cores to use in parallel. -1 means "use all in system"')
@click.option("--model", default="hog",
              help='Which face detection model to use. Options are "hog" or "cnn".')
def main(image_to_check: str, cpus: int, model: str) -> None:
    if not os.path.isdir(image_to_check):
        test_image(image_to_check, model)
    elif cpus == 1:
        for path in image_files_in_folder(image_to_check):
            test_image(path, model)
    else:
        process_images_in_process_pool(image_files_in_folder(image_to_check), cpus, model)


if __name__ == "__main__":
    main()
