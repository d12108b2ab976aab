#!/usr/bin/env node
import { main } from "../cli";

void main();
