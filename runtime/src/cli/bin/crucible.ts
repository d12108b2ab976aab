#!/usr/bin/env node
import { main } from "..";

void main();
