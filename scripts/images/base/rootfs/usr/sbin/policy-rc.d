#!/bin/sh
# stagectl images: never start services from a package's maintainer scripts during
# an image build (nginx or docker.io would otherwise try to start their daemons).
exit 101
