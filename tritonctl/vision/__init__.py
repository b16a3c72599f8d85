"""Numbers on images, no servers: detections, letterbox, decoding YOLO heads and NMS, matching and AP, generated scenes."""
