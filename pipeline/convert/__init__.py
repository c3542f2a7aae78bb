"""Masks to YOLO boxes, YOLO polygons and COCO instances, with the splits every stage shares."""
